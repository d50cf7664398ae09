// Logger plumbing shared by every build of the plugin library: TensorRT calls the exported
// setLoggerFinder() after loading the library; logMessage() forwards to the logger it finds.
#include "plugin_logging.h"

#include <mutex>

namespace idlevit::plugin
{
namespace
{

std::mutex gLoggerMutex;
nvinfer1::ILoggerFinder* gLoggerFinder{nullptr};

} // namespace

void setLoggerFinderOnce(nvinfer1::ILoggerFinder* finder) noexcept
{
    std::lock_guard<std::mutex> lock(gLoggerMutex);
    if (gLoggerFinder == nullptr && finder != nullptr)
    {
        gLoggerFinder = finder;
    }
}

void logMessage(nvinfer1::ILogger::Severity severity, char const* msg) noexcept
{
    try
    {
        nvinfer1::ILogger* logger{nullptr};
        {
            std::lock_guard<std::mutex> lock(gLoggerMutex);
            if (gLoggerFinder != nullptr)
            {
                logger = gLoggerFinder->findLogger();
            }
        }
        if (logger != nullptr)
        {
            logger->log(severity, msg);
        }
    }
    catch (...)
    {
        // Logging must never take the process down.
    }
}

} // namespace idlevit::plugin

//! Called by TensorRT once after loading the library; keeps the first non-null finder.
extern "C" __attribute__((visibility("default"))) void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    idlevit::plugin::setLoggerFinderOnce(finder);
}
