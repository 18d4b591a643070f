"""Processing adapters: parameters in, core call, outputs out. No science here."""
