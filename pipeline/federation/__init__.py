"""Federation: site actors, the coordinator (rounds, quorum, timeouts), secure sum."""
