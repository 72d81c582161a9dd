"""Manager jobs: the job record and its states, the queues (in process or Redis), the preheat fan-out to schedulers.

``docs/preheat.md#on-the-manager``.
"""
