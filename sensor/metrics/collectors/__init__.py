"""The collectors, one module per part of the sensor they read: each builds its families fresh
at every scrape from the objects a `sensor.metrics.views.SensorView` hands it."""
