from model.model import PRESETS, Config, KVCache, Model, preset

__all__ = ["Config", "KVCache", "Model", "PRESETS", "preset"]
