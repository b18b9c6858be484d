//! Image references: parsing and normalization (`busybox` -> `docker.io/library/busybox:latest`).
