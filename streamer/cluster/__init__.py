"""The model stage spread over a Ray cluster (``[run] engine = "ray"``).

Nothing here imports Ray at module level: :mod:`streamer.cluster.engine` imports it when a
run asks for the engine. :mod:`ring` (consistent hashing) and :mod:`worker` (the body of
a model actor) are plain Python, tested without Ray.
"""
