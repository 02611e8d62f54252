"""DeepSeek-OCR: configuration, image geometry, and (in sibling modules) the reference model and workloads."""

from opmeter.models.deepseek_ocr.config import FULL_SIZE, PRESETS, DeepseekOCRConfig, get_config
from opmeter.models.deepseek_ocr.geometry import VisionWorkload, choose_crop_grid

__all__ = ["FULL_SIZE", "PRESETS", "DeepseekOCRConfig", "VisionWorkload", "choose_crop_grid", "get_config"]
