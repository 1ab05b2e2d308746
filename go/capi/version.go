package main

/*
#include <stdlib.h>
*/
import "C"

// version is set at link time (-ldflags "-X main.version=..."): the Makefile
// passes the package's version from python/runai_model_streamer/_version.py,
// the one place it is written, so `go build` alone says "dev".
var version = "dev"

// cVersion is allocated once and never freed: ms_version returns it.
var cVersion = C.CString(version)

//export msgo_version
func msgo_version() *C.char { return cVersion }
