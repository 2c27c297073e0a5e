"""Stages: take frames (and markers) from an inbox channel, put outputs in an outbox."""

from streamer.stages.base import Stage
from streamer.stages.threshold import ThresholdStage

__all__ = ["Stage", "ThresholdStage"]
