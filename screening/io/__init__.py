"""Pipeline input: finding, checking and reading image shards (``image_source``)."""
