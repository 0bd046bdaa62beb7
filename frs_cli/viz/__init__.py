"""Pictures for inspecting distillation: FRS masks over the teacher's view (``masks``)."""
