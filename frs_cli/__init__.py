"""frs: Feature-Richness Score distillation for object detectors, with a cached teacher."""

__version__ = "0.1.0"
