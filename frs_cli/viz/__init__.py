"""Pictures, drawn with Pillow alone: FRS mask figures (``masks``, ``cache_view``), run-report charts (``plots``),
and the primitives they share (``draw``)."""
