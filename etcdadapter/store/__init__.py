"""Storage backends: the Store contract (base), the revision logic (mvcc) and the stores."""
