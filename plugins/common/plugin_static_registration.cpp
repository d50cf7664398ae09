// Load-time registration for builds that link libnvinfer (trtexec --staticPlugins, or a plain dlopen
// in a process that already uses TensorRT). Used only in libidlevit_plugins_static.so, which does not
// export getCreators, so the two registration paths never meet in one library.
#include "../idle_scatter/idle_scatter_plugin.h"

namespace
{

//! Registers the creator with the process-wide registry under the "idlevit" namespace at load time.
struct IdleScatterStaticRegistrar
{
    IdleScatterStaticRegistrar()
    {
        static idlevit::plugin::IdleScatterPluginCreator sCreator;
        getPluginRegistry()->registerCreator(sCreator, idlevit::plugin::kIDLE_SCATTER_NAMESPACE);
    }
};

IdleScatterStaticRegistrar const gIdleScatterRegistrar{};

} // namespace
