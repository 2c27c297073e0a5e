"""The live view in a browser: the server (:mod:`streamer.web.server`), the state it shows
(:mod:`streamer.web.hub`), the run's health (:mod:`streamer.web.health`), the address and
token (:mod:`streamer.web.bind`) and a finished run's review (:mod:`streamer.web.review`,
``streamer serve``). The sink that feeds it is :mod:`streamer.sinks.web`."""
