# cuda-emu: turns a .cu file (or a header with device code) into host C++ for the emulator (cmake -DIN=x.cu -DOUT=x.cc -P ...).
# The only syntax outside C++ that cuda/ uses is rewritten:
#   kernel<<<grid, block, smem, stream>>>(args)  ->  GPTOSS_LAUNCH(grid, block, smem, stream, kernel)(args)
#   extern __shared__ [__align__(N)] T name[];   ->  GPTOSS_DYNAMIC_SMEM(T, name);  (128-aligned)
#   __shared__ [__align__(N)] T name[a][b];      ->  GPTOSS_SHARED[_A]([N, ]T, name, [a][b]);  (the block's own)
# Anything else (a nested template kernel name, a launch with fewer than four arguments, a
# __shared__ declaration of another form) is left alone and fails to compile, so nothing is
# mistranslated silently.
file(READ "${IN}" src)
string(REGEX REPLACE "([A-Za-z_][A-Za-z_0-9]*(<[^<>;]*>)?)<<<([^;<>]*)>>>" "GPTOSS_LAUNCH(\\3, \\1)" src "${src}")
string(REGEX REPLACE "extern __shared__ (__align__\\([0-9]+\\) )?([A-Za-z_0-9]+) ([A-Za-z_0-9]+)\\[\\];" "GPTOSS_DYNAMIC_SMEM(\\2, \\3);" src "${src}")
set(_decl "([A-Za-z_][A-Za-z_0-9:]*) ([A-Za-z_][A-Za-z_0-9]*)((\\[[^];]+\\])*);")
string(REGEX REPLACE "__shared__ __align__\\(([0-9]+)\\) ${_decl}" "GPTOSS_SHARED_A(\\1, \\2, \\3, \\4);" src "${src}")
string(REGEX REPLACE "__shared__ ${_decl}" "GPTOSS_SHARED(\\1, \\2, \\3);" src "${src}")
file(WRITE "${OUT}.tmp" "// Generated from ${IN} by cuda/emu/translate.cmake: do not edit.\n#line 1 \"${IN}\"\n${src}")
file(COPY_FILE "${OUT}.tmp" "${OUT}" ONLY_IF_DIFFERENT)
