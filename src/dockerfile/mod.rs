//! Dockerfile front end: parsing into typed instructions, variable expansion, and .dockerignore matching.
