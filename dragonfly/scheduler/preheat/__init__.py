"""Preheat on the scheduler: PreheatFile / PreheatImage make chosen hosts download, StatFile / StatImage say who
holds what (``docs/preheat.md#on-the-scheduler``)."""
