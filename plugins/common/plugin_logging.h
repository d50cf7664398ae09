// Logging for the plugin library: messages go to the logger TensorRT hands over through setLoggerFinder(),
// or nowhere when the library was not loaded by TensorRT.
#pragma once

#include <NvInferRuntime.h>

namespace idlevit::plugin
{

//! Log `msg` at `severity` through TensorRT's logger, if one was provided.
void logMessage(nvinfer1::ILogger::Severity severity, char const* msg) noexcept;

//! Keep the first non-null logger finder TensorRT provides (called by the exported setLoggerFinder).
void setLoggerFinderOnce(nvinfer1::ILoggerFinder* finder) noexcept;

//! Shorthand for an error message.
inline void logError(char const* msg) noexcept
{
    logMessage(nvinfer1::ILogger::Severity::kERROR, msg);
}

} // namespace idlevit::plugin
