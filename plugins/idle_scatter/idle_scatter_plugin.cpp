// IdleScatter TensorRT plugin: shape/type rules and enqueue onto the CUDA kernel in idle_scatter_kernel.cu.
#include "idle_scatter_plugin.h"

#include "../common/plugin_logging.h"
#include "idle_scatter_kernel.cuh"

#include <new>

using nvinfer1::DataType;
using nvinfer1::TensorFormat;

namespace idlevit::plugin
{
namespace
{

constexpr int32_t kNB_INPUTS = 3;
constexpr int32_t kNB_OUTPUTS = 1;
constexpr int32_t kTOKENS = 0;
constexpr int32_t kINDICES = 1;
constexpr int32_t kUPDATES = 2;

bool isFloat(DataType t) noexcept
{
    return t == DataType::kFLOAT || t == DataType::kHALF;
}

//! True when the ranks are tokens 3, indices 2, updates 3.
bool ranksOk(int32_t tokensRank, int32_t indicesRank, int32_t updatesRank) noexcept
{
    return tokensRank == 3 && indicesRank == 2 && updatesRank == 3;
}

} // namespace

// ---- IPluginV3 ----

nvinfer1::IPluginCapability* IdleScatterPlugin::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<IdleScatterBuildBase*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

nvinfer1::IPluginV3* IdleScatterPlugin::clone() noexcept
{
    return new (std::nothrow) IdleScatterPlugin();
}

// ---- IPluginV3OneCore ----

char const* IdleScatterPlugin::getPluginName() const noexcept
{
    return kIDLE_SCATTER_NAME;
}

char const* IdleScatterPlugin::getPluginVersion() const noexcept
{
    return kIDLE_SCATTER_VERSION;
}

char const* IdleScatterPlugin::getPluginNamespace() const noexcept
{
    return kIDLE_SCATTER_NAMESPACE;
}

// ---- IPluginV3OneBuild(V2) ----

int32_t IdleScatterPlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS
        || !ranksOk(in[kTOKENS].desc.dims.nbDims, in[kINDICES].desc.dims.nbDims, in[kUPDATES].desc.dims.nbDims))
    {
        logError("IdleScatter: expected tokens (B,R,C), indices (B,K1), updates (B,K1,C) and one output");
        return 1;
    }
    return 0;
}

int32_t IdleScatterPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS || !isFloat(inputTypes[kTOKENS]))
    {
        logError("IdleScatter: tokens must be FP32 or FP16, with 3 inputs and 1 output");
        return 1;
    }
    outputTypes[0] = inputTypes[kTOKENS];
    return 0;
}

int32_t IdleScatterPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, nvinfer1::DimsExprs* outputs,
    int32_t nbOutputs, nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept
{
    if (nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS
        || !ranksOk(inputs[kTOKENS].nbDims, inputs[kINDICES].nbDims, inputs[kUPDATES].nbDims))
    {
        logError("IdleScatter: expected tokens (B,R,C), indices (B,K1), updates (B,K1,C)");
        return 1;
    }
    outputs[0] = inputs[kTOKENS];
    return 0;
}

bool IdleScatterPlugin::supportsFormatCombination(
    int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS || pos < 0 || pos >= kNB_INPUTS + kNB_OUTPUTS)
    {
        return false;
    }
    nvinfer1::PluginTensorDesc const& d = inOut[pos].desc;
    if (d.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    switch (pos)
    {
    case kTOKENS: return isFloat(d.type);
    case kINDICES: return d.type == DataType::kINT32 || d.type == DataType::kINT64;
    default: return d.type == inOut[kTOKENS].desc.type; // updates and output follow tokens
    }
}

int32_t IdleScatterPlugin::getNbOutputs() const noexcept
{
    return kNB_OUTPUTS;
}

#if IDLEVIT_TRT_ALIASED_IO
int32_t IdleScatterPlugin::getAliasedInput(int32_t outputIndex) noexcept
{
    // Output 0 may live in the tokens buffer (read-modify-write); only used when TensorRT's
    // PreviewFeature::kALIASED_PLUGIN_IO_10_03 is on. enqueue() then skips the copy.
    return outputIndex == 0 ? kTOKENS : -1;
}
#endif

// ---- IPluginV3OneRuntime ----

int32_t IdleScatterPlugin::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::PluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS)
    {
        return 1;
    }
    nvinfer1::Dims const& t = in[kTOKENS].dims;
    nvinfer1::Dims const& i = in[kINDICES].dims;
    nvinfer1::Dims const& u = in[kUPDATES].dims;
    bool const ok = ranksOk(t.nbDims, i.nbDims, u.nbDims) && i.d[0] == t.d[0] && u.d[0] == t.d[0]
        && u.d[1] == i.d[1] && u.d[2] == t.d[2];
    if (!ok)
    {
        logError("IdleScatter: shapes disagree: need tokens (B,R,C), indices (B,K1), updates (B,K1,C)");
        return 1;
    }
    return 0;
}

int32_t IdleScatterPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
    nvinfer1::PluginTensorDesc const* /*outputDesc*/, void const* const* inputs, void* const* outputs,
    void* /*workspace*/, cudaStream_t stream) noexcept
{
    nvinfer1::Dims const& t = inputDesc[kTOKENS].dims;
    idlevit::IdleScatterArgs const args{outputs[0], inputs[kTOKENS], inputs[kINDICES],
        inputDesc[kINDICES].type == DataType::kINT64, inputs[kUPDATES], t.d[0], t.d[1],
        inputDesc[kINDICES].dims.d[1], t.d[2], inputDesc[kTOKENS].type == DataType::kHALF ? 2 : 4};
    cudaError_t const err = idlevit::launchIdleScatter(args, stream);
    if (err != cudaSuccess)
    {
        logError("IdleScatter: CUDA launch failed");
        return 1;
    }
    return 0;
}

nvinfer1::IPluginV3* IdleScatterPlugin::attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept
{
    return clone();
}

nvinfer1::PluginFieldCollection const* IdleScatterPlugin::getFieldsToSerialize() noexcept
{
    return &mSerialized; // stateless: nothing to serialize
}

// ---- IdleScatterPluginCreator ----

nvinfer1::IPluginV3* IdleScatterPluginCreator::createPlugin(
    char const* /*name*/, nvinfer1::PluginFieldCollection const* /*fc*/, nvinfer1::TensorRTPhase /*phase*/) noexcept
{
    return new (std::nothrow) IdleScatterPlugin();
}

nvinfer1::PluginFieldCollection const* IdleScatterPluginCreator::getFieldNames() noexcept
{
    return &mFields;
}

char const* IdleScatterPluginCreator::getPluginName() const noexcept
{
    return kIDLE_SCATTER_NAME;
}

char const* IdleScatterPluginCreator::getPluginVersion() const noexcept
{
    return kIDLE_SCATTER_VERSION;
}

char const* IdleScatterPluginCreator::getPluginNamespace() const noexcept
{
    return kIDLE_SCATTER_NAMESPACE;
}

} // namespace idlevit::plugin
