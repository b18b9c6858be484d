//! Build planner and executor: stages, steps, layers, and the resulting image.
