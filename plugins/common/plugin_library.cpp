// Entry point TensorRT looks up when it loads libidlevit_plugins.so as a plugin shared library
// (IPluginRegistry::loadLibrary, trtexec --dynamicPlugins, Python registry.load_library):
//   extern "C" nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
// (setLoggerFinder is in plugin_logging.cpp.) Nothing here calls into libnvinfer, so the library
// needs only the TensorRT headers to build.
#include "../idle_scatter/idle_scatter_plugin.h"

//! All creators in this library (IPluginV3 creators); TensorRT registers each under its own namespace.
extern "C" __attribute__((visibility("default"))) nvinfer1::IPluginCreatorInterface* const* getCreators(
    int32_t& nbCreators)
{
    static idlevit::plugin::IdleScatterPluginCreator sIdleScatterCreator;
    static nvinfer1::IPluginCreatorInterface* const sCreators[] = {&sIdleScatterCreator};
    nbCreators = static_cast<int32_t>(sizeof(sCreators) / sizeof(sCreators[0]));
    return sCreators;
}
