"""The wheels the Kaggle image lacks: the target's closure minus the image baseline, fetched or built,
checked statically and rehearsed by an offline install."""

from bundler.dataset.wheels.vendor import VendoredWheel, WheelPlan, vendor_wheels

__all__ = ["VendoredWheel", "WheelPlan", "vendor_wheels"]
