"""Floor 2: configuration files, loaded and validated.

Each program has its own module here (``collector``, ``exporter``); this
package's ``schema`` holds the shared parsing of sizes, durations and typed
keys so that every bad value is reported the same way, naming its key.
"""
