"""Pipeline: message building, the bounded queue and its lanes, batching, and
the replay of spooled records into the queue. Receive (receive/) puts into it;
the publishers (publish/) take batches out of it."""
