"""Pipeline I/O: reading image shards (``image_source``) and writing ROI tables (``roi_sink``)."""
