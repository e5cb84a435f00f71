// Translation unit that carries the precompiled LibTorch header (see src/CMakeLists.txt).
