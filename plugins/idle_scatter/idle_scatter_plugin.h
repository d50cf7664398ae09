// TensorRT IPluginV3 for idlevit::IdleScatter (version 1): out = tokens with the kept rows replaced by updates.
// Inputs: tokens (B, R, C) FP32|FP16, indices (B, K1) INT32|INT64, updates (B, K1, C) same type as tokens.
// Output: (B, R, C), same type as tokens. No attributes. See plugins/README.md for the full contract.
#pragma once

#include <NvInferRuntime.h>

// IPluginV3OneBuildV2 (output aliased to an input, read-modify-write) exists from TensorRT 10.3 on.
#if NV_TENSORRT_MAJOR > 10 || (NV_TENSORRT_MAJOR == 10 && NV_TENSORRT_MINOR >= 3)
#define IDLEVIT_TRT_ALIASED_IO 1
#else
#define IDLEVIT_TRT_ALIASED_IO 0
#endif

namespace idlevit::plugin
{

#if IDLEVIT_TRT_ALIASED_IO
using IdleScatterBuildBase = nvinfer1::IPluginV3OneBuildV2;
#else
using IdleScatterBuildBase = nvinfer1::IPluginV3OneBuild;
#endif

constexpr char const* kIDLE_SCATTER_NAME{"IdleScatter"};
constexpr char const* kIDLE_SCATTER_VERSION{"1"};
constexpr char const* kIDLE_SCATTER_NAMESPACE{"idlevit"};

//! The plugin object: stateless apart from its layer name; shapes and types come with every call.
class IdleScatterPlugin final : public nvinfer1::IPluginV3,
                                public nvinfer1::IPluginV3OneCore,
                                public IdleScatterBuildBase,
                                public nvinfer1::IPluginV3OneRuntime
{
public:
    IdleScatterPlugin() = default;
    ~IdleScatterPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild (V2 from TensorRT 10.3)
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
        nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs,
        int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getNbOutputs() const noexcept override;
#if IDLEVIT_TRT_ALIASED_IO
    int32_t getAliasedInput(int32_t outputIndex) noexcept override;
#endif

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    nvinfer1::PluginFieldCollection mSerialized{0, nullptr};
};

//! Creator registered under name "IdleScatter", version "1", namespace "idlevit". It takes no fields and
//! ignores any it is given (the ONNX parser may forward node attributes).
class IdleScatterPluginCreator final : public nvinfer1::IPluginCreatorV3One
{
public:
    IdleScatterPluginCreator() = default;
    ~IdleScatterPluginCreator() override = default;

    nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
        nvinfer1::TensorRTPhase phase) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

private:
    nvinfer1::PluginFieldCollection mFields{0, nullptr};
};

} // namespace idlevit::plugin
