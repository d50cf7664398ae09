// Host-side test of libidlevit_plugins.so without TensorRT's runtime: loads the library with dlopen and
// drives it through the same entry points and interfaces TensorRT uses (getCreators, setLoggerFinder,
// IPluginCreatorV3One, IPluginV3 capabilities), checking the shape/type/format rules. No GPU is touched.
// Usage: test_idle_scatter_plugin_host path/to/libidlevit_plugins.so
#include "idle_scatter_plugin.h"

#include <dlfcn.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace
{

int gFailures = 0;

void check(bool ok, char const* what)
{
    std::printf("%s: %s\n", ok ? "PASS" : "FAIL", what);
    gFailures += ok ? 0 : 1;
}

//! Collects what the plugin logs.
class RecordingLogger : public ILogger
{
public:
    void log(Severity severity, AsciiChar const* msg) noexcept override
    {
        if (severity <= Severity::kERROR)
        {
            errors.emplace_back(msg);
        }
    }
    std::vector<std::string> errors;
};

class Finder : public ILoggerFinder
{
public:
    explicit Finder(ILogger* logger) : mLogger(logger) {}
    ILogger* findLogger() override
    {
        return mLogger;
    }

private:
    ILogger* mLogger;
};

DynamicPluginTensorDesc desc(DataType type, int32_t rank, TensorFormat format = TensorFormat::kLINEAR)
{
    DynamicPluginTensorDesc d{};
    d.desc.type = type;
    d.desc.format = format;
    d.desc.dims.nbDims = rank;
    return d;
}

PluginTensorDesc shaped(DataType type, std::vector<int64_t> const& dims)
{
    PluginTensorDesc d{};
    d.type = type;
    d.format = TensorFormat::kLINEAR;
    d.dims.nbDims = static_cast<int32_t>(dims.size());
    for (size_t i = 0; i < dims.size(); ++i)
    {
        d.dims.d[i] = dims[i];
    }
    return d;
}

bool kindIs(IVersionedInterface const* i, char const* kind, int32_t major)
{
    InterfaceInfo const info = i->getInterfaceInfo();
    return std::strcmp(info.kind, kind) == 0 && info.major == major;
}

} // namespace

int main(int argc, char** argv)
{
    if (argc != 2)
    {
        std::printf("usage: %s libidlevit_plugins.so\n", argv[0]);
        return 2;
    }
    void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    check(lib != nullptr, "dlopen with RTLD_NOW (no unresolved symbols)");
    if (lib == nullptr)
    {
        std::printf("%s\n", dlerror());
        return 1;
    }
    using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
    using SetLoggerFinder = void (*)(ILoggerFinder*);
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
    auto setLoggerFinder = reinterpret_cast<SetLoggerFinder>(dlsym(lib, "setLoggerFinder"));
    check(getCreators != nullptr && setLoggerFinder != nullptr, "exports getCreators and setLoggerFinder");
    if (getCreators == nullptr || setLoggerFinder == nullptr)
    {
        return 1;
    }
    RecordingLogger logger;
    Finder finder(&logger);
    setLoggerFinder(&finder);

    int32_t n = 0;
    IPluginCreatorInterface* const* creators = getCreators(n);
    check(n == 1 && kindIs(creators[0], "PLUGIN CREATOR_V3ONE", 1), "one IPluginCreatorV3One creator");
    auto* creator = static_cast<IPluginCreatorV3One*>(creators[0]);
    check(std::strcmp(creator->getPluginName(), "IdleScatter") == 0
            && std::strcmp(creator->getPluginVersion(), "1") == 0
            && std::strcmp(creator->getPluginNamespace(), "idlevit") == 0,
        "creator is IdleScatter / 1 / idlevit");
    check(creator->getFieldNames()->nbFields == 0, "creator takes no fields");

    // Attributes the ONNX parser may forward must not stop plugin creation.
    char const version[] = "1";
    char const space[] = "idlevit";
    PluginField const fields[] = {{"plugin_version", version, PluginFieldType::kCHAR, 1},
        {"plugin_namespace", space, PluginFieldType::kCHAR, 7}};
    PluginFieldCollection const fc{2, fields};
    IPluginV3* plugin = creator->createPlugin("idle_scatter_0", &fc, TensorRTPhase::kBUILD);
    check(plugin != nullptr, "createPlugin (build phase, forwarded attributes)");
    if (plugin == nullptr)
    {
        return 1;
    }
    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<idlevit::plugin::IdleScatterBuildBase*>(
        plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* runtime
        = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    check(core != nullptr && kindIs(core, "PLUGIN_V3ONE_CORE", 1) && build != nullptr
            && kindIs(build, "PLUGIN_V3ONE_BUILD", IDLEVIT_TRT_ALIASED_IO ? 2 : 1) && runtime != nullptr
            && kindIs(runtime, "PLUGIN_V3ONE_RUNTIME", 1),
        "capabilities: core v1, build v2 (v1 before TensorRT 10.3), runtime v1");
    check(std::strcmp(core->getPluginName(), "IdleScatter") == 0
            && std::strcmp(core->getPluginNamespace(), "idlevit") == 0,
        "plugin name and namespace match the creator");
    check(build->getNbOutputs() == 1, "one output");
#if IDLEVIT_TRT_ALIASED_IO
    check(build->getAliasedInput(0) == 0 && build->getAliasedInput(1) == -1, "output 0 aliased to input 0 (tokens)");
#endif

    // supportsFormatCombination: inputs 0..2, output 3; decisions depend on inOut[0..pos] only.
    auto combo = [&](DataType t, DataType i, DataType u, DataType o, int32_t pos) {
        DynamicPluginTensorDesc io[4] = {desc(t, 3), desc(i, 2), desc(u, 3), desc(o, 3)};
        return build->supportsFormatCombination(pos, io, 3, 1);
    };
    bool fmt = combo(DataType::kFLOAT, DataType::kINT64, DataType::kFLOAT, DataType::kFLOAT, 0)
        && combo(DataType::kHALF, DataType::kINT32, DataType::kHALF, DataType::kHALF, 0)
        && !combo(DataType::kBF16, DataType::kINT64, DataType::kBF16, DataType::kBF16, 0)
        && !combo(DataType::kINT32, DataType::kINT64, DataType::kINT32, DataType::kINT32, 0)
        && combo(DataType::kFLOAT, DataType::kINT32, DataType::kFLOAT, DataType::kFLOAT, 1)
        && combo(DataType::kFLOAT, DataType::kINT64, DataType::kFLOAT, DataType::kFLOAT, 1)
        && !combo(DataType::kFLOAT, DataType::kFLOAT, DataType::kFLOAT, DataType::kFLOAT, 1)
        && combo(DataType::kHALF, DataType::kINT64, DataType::kHALF, DataType::kHALF, 2)
        && !combo(DataType::kHALF, DataType::kINT64, DataType::kFLOAT, DataType::kHALF, 2)
        && combo(DataType::kHALF, DataType::kINT64, DataType::kHALF, DataType::kHALF, 3)
        && !combo(DataType::kFLOAT, DataType::kINT64, DataType::kFLOAT, DataType::kHALF, 3);
    DynamicPluginTensorDesc vec[4] = {desc(DataType::kHALF, 3, TensorFormat::kHWC8), desc(DataType::kINT64, 2),
        desc(DataType::kHALF, 3), desc(DataType::kHALF, 3)};
    fmt = fmt && !build->supportsFormatCombination(0, vec, 3, 1);
    check(fmt, "supportsFormatCombination: linear, FP32/FP16 floats, INT32/INT64 indices, types follow tokens");

    DataType out{};
    DataType const inF[3] = {DataType::kFLOAT, DataType::kINT64, DataType::kFLOAT};
    DataType const inH[3] = {DataType::kHALF, DataType::kINT32, DataType::kHALF};
    DataType const inI[3] = {DataType::kINT32, DataType::kINT32, DataType::kINT32};
    bool types = build->getOutputDataTypes(&out, 1, inF, 3) == 0 && out == DataType::kFLOAT;
    types = types && build->getOutputDataTypes(&out, 1, inH, 3) == 0 && out == DataType::kHALF;
    types = types && build->getOutputDataTypes(&out, 1, inI, 3) != 0;
    check(types, "getOutputDataTypes: output type = tokens type, integer tokens rejected");

    // getOutputShapes: output expressions are input 0's. The expressions are opaque tokens here and the
    // plugin never uses the builder, so stand-ins are enough.
    int tag[5] = {};
    auto expr = [&](int i) { return reinterpret_cast<IDimensionExpr const*>(&tag[i]); };
    DimsExprs shapes[3]{};
    shapes[0].nbDims = 3;
    shapes[0].d[0] = expr(0);
    shapes[0].d[1] = expr(1);
    shapes[0].d[2] = expr(2);
    shapes[1].nbDims = 2;
    shapes[1].d[0] = expr(0);
    shapes[1].d[1] = expr(3);
    shapes[2].nbDims = 3;
    shapes[2].d[0] = expr(0);
    shapes[2].d[1] = expr(3);
    shapes[2].d[2] = expr(2);
    alignas(IExprBuilder) unsigned char builderStandIn[sizeof(IExprBuilder)] = {};
    auto& builder = *reinterpret_cast<IExprBuilder*>(builderStandIn);
    DimsExprs outShape{};
    bool shapeOk = build->getOutputShapes(shapes, 3, nullptr, 0, &outShape, 1, builder) == 0
        && outShape.nbDims == 3 && outShape.d[0] == expr(0) && outShape.d[1] == expr(1)
        && outShape.d[2] == expr(2);
    shapes[1].nbDims = 3;
    shapeOk = shapeOk && build->getOutputShapes(shapes, 3, nullptr, 0, &outShape, 1, builder) != 0;
    check(shapeOk, "getOutputShapes: output = tokens shape; rank-3 indices rejected");

    // onShapeChange: consistent shapes pass, inconsistent ones fail and log an error.
    PluginTensorDesc good[3] = {shaped(DataType::kFLOAT, {8, 197, 384}), shaped(DataType::kINT64, {8, 138}),
        shaped(DataType::kFLOAT, {8, 138, 384})};
    PluginTensorDesc outDesc = shaped(DataType::kFLOAT, {8, 197, 384});
    size_t const errorsBefore = logger.errors.size();
    bool change = runtime->onShapeChange(good, 3, &outDesc, 1) == 0;
    PluginTensorDesc bad[3] = {good[0], good[1], shaped(DataType::kFLOAT, {8, 137, 384})};
    change = change && runtime->onShapeChange(bad, 3, &outDesc, 1) != 0;
    check(change && logger.errors.size() == errorsBefore + 1, "onShapeChange: K1 mismatch rejected and logged");

    // enqueue on an empty batch touches no memory and launches nothing.
    PluginTensorDesc empty[3] = {shaped(DataType::kHALF, {0, 197, 384}), shaped(DataType::kINT32, {0, 138}),
        shaped(DataType::kHALF, {0, 138, 384})};
    void const* inputs[3] = {nullptr, nullptr, nullptr};
    void* outputs[1] = {nullptr};
    check(runtime->enqueue(empty, &outDesc, inputs, outputs, nullptr, nullptr) == 0, "enqueue: B=0 is a no-op");

    check(runtime->getFieldsToSerialize()->nbFields == 0, "nothing to serialize");
    IPluginV3* attached = runtime->attachToContext(nullptr);
    IPluginV3* cloned = plugin->clone();
    check(attached != nullptr && cloned != nullptr && attached != plugin && cloned != plugin,
        "clone and attachToContext return new objects");
    IPluginV3* runtimePlugin = creator->createPlugin("idle_scatter_0", runtime->getFieldsToSerialize(),
        TensorRTPhase::kRUNTIME);
    check(runtimePlugin != nullptr, "createPlugin (runtime phase, from serialized fields)");
    delete attached;
    delete cloned;
    delete runtimePlugin;
    delete plugin;

    if (gFailures != 0)
    {
        std::printf("FAILED: %d check(s)\n", gFailures);
        return 1;
    }
    std::printf("ALL PASSED\n");
    return 0;
}
