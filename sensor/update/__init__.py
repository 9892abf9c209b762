"""Keeping the downloaded data current: `datafiles` (``phonehome update-data``: the cloud
range files, the ASN and domain-owner datasets) and `manifest` (the one reader and writer of
``data/manifest.json``, also read by ``check`` and the metrics).

Nothing is imported here, so reading the manifest does not load the enrichers `datafiles`
validates downloads with."""
