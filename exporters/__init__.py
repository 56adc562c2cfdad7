"""Alert sinks, each one small module behind one interface."""
