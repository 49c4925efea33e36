"""Serving the systems to concurrent visitors: model worker processes behind one pool (`workers`)."""
