# Helpers shared by every target of the project.

# Warnings on for our own code; LibTorch's headers are included as SYSTEM so theirs stay quiet.
function(ds_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wno-unused-parameter)
endfunction()

# ds_library(name SOURCES ... DEPS ...): a library of the project, exported and installed.
function(ds_library name)
  cmake_parse_arguments(A "" "" "SOURCES;PUBLIC_DEPS;PRIVATE_DEPS" ${ARGN})
  add_library(${name} ${A_SOURCES})
  add_library(deepspeed_cpp::${name} ALIAS ${name})
  target_include_directories(${name} PUBLIC
    $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/include>
    $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
  target_link_libraries(${name} PUBLIC ${A_PUBLIC_DEPS} PRIVATE ${A_PRIVATE_DEPS})
  ds_warnings(${name})
  install(TARGETS ${name} EXPORT deepspeed_cppTargets
          LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
          ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
          RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endfunction()

# Precompiled LibTorch headers, built once and reused by every LibTorch target.
function(ds_use_torch_pch target)
  if(DS_USE_PCH)
    if(TARGET ds_torch_pch)
      target_precompile_headers(${target} REUSE_FROM ds_torch_pch)
    endif()
  endif()
endfunction()

# ds_tool(name SOURCES ... DEPS ...): an installed command-line program.
function(ds_tool name)
  cmake_parse_arguments(A "" "" "SOURCES;DEPS" ${ARGN})
  add_executable(${name} ${A_SOURCES})
  target_link_libraries(${name} PRIVATE ${A_DEPS})
  ds_warnings(${name})
  install(TARGETS ${name} RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endfunction()
