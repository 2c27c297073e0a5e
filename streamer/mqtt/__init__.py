"""MQTT: the broker's address and options (:mod:`~streamer.mqtt.broker`), the sink that
publishes outputs, the source that subscribes to frames, and their payload format."""
