"""MQTT: the broker's address and options (:mod:`~streamer.mqtt.broker`), the payload
format of frames (:mod:`~streamer.mqtt.payload`), the source that subscribes to them
(:mod:`~streamer.mqtt.source`) and ``streamer publish`` (:mod:`~streamer.mqtt.publish`).
The sink that publishes outputs is :mod:`streamer.sinks.mqtt`."""
