//! Scaling curves: throughput and server memory as client connections grow (1 → 1,000) and
//! as registered executors grow (10 → 100,000), for each service.
