//! Build context: selecting COPY/ADD sources (globs, excludes, .dockerignore) from a directory.
