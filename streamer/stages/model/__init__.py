"""The model stage: a stateful model over every stream, with its parts.

- :mod:`.stage`: :class:`ModelStage` (the loop, rounds, batching, model calls, the mode's
  policy, the idle TTL); :mod:`.stream`: one stream's synchronous logic
  (:class:`ModelStream`); :mod:`.settings`: :class:`ModelSettings`; :mod:`.checks`: what
  is checked before the run and of each frame.
- the parts of a stream: :mod:`.features` (front-ends; :mod:`.frontend` their interface,
  :mod:`.logmel`), :mod:`.heads` and :mod:`.generate` (heads), :mod:`.postprocess`,
  :mod:`.padding` and :mod:`.labelwise` (labels, smoothing, segments).
"""

from streamer.options import Mode
from streamer.stages.model.settings import ModelSettings
from streamer.stages.model.stage import ModelStage, dry_check
from streamer.stages.model.stream import ModelStream

__all__ = ["Mode", "ModelSettings", "ModelStage", "ModelStream", "dry_check"]
