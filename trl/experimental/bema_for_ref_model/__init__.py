"""DPO whose reference model follows the BEMA weights of the policy (`BEMACallback`, `DPOTrainer`)."""

from .bema_for_ref_model import BEMACallback, DPOTrainer

__all__ = ["BEMACallback", "DPOTrainer"]
