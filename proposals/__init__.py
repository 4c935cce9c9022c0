"""Region proposals: selective search backends, proposal cache and recall reports."""
