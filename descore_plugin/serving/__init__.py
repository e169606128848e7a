"""DeScore as a service (`descore serve`) and its clients."""
