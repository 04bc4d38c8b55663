// cnirt: a minimal container runtime's view of CNI, built on libcni, for our tests.
//
//	cnirt add|check|del <conflist file> <netns path>
//
// Environment: CNI_PATH (plugin dirs, ':'-separated), CNI_CONTAINERID (default: the upstream
// cnitool's, "cnitool-" + hex of the first 10 bytes of the SHA-512 of the absolute netns path),
// CNI_IFNAME (default eth0), CNI_ARGS ("K=V;..."), CAP_ARGS (JSON object of capability args,
// i.e. runtimeConfig), CNI_CACHE_DIR (libcni's result cache; default a libcni default).
// ADD prints the result JSON on stdout; errors go to stderr with exit status 1.
package main

import (
	"context"
	"crypto/sha512"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
)

func fail(format string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, "cnirt: "+format+"\n", a...)
	os.Exit(1)
}

func main() {
	if len(os.Args) != 4 {
		fail("usage: cnirt add|check|del <conflist> <netns>")
	}
	verb, confFile, netns := os.Args[1], os.Args[2], os.Args[3]
	list, err := libcni.ConfListFromFile(confFile)
	if err != nil {
		fail("loading %s: %v", confFile, err)
	}
	id := os.Getenv("CNI_CONTAINERID")
	if id == "" {
		// As the upstream cnitool derives it.
		abs, err := filepath.Abs(netns)
		if err != nil {
			fail("netns %s: %v", netns, err)
		}
		netns = abs
		s := sha512.Sum512([]byte(netns))
		id = fmt.Sprintf("cnitool-%x", s[:10])
	}
	ifname := os.Getenv("CNI_IFNAME")
	if ifname == "" {
		ifname = "eth0"
	}
	rt := &libcni.RuntimeConf{ContainerID: id, NetNS: netns, IfName: ifname}
	if a := os.Getenv("CNI_ARGS"); a != "" {
		for _, kv := range strings.Split(a, ";") {
			if p := strings.SplitN(kv, "=", 2); len(p) == 2 {
				rt.Args = append(rt.Args, [2]string{p[0], p[1]})
			}
		}
	}
	if c := os.Getenv("CAP_ARGS"); c != "" {
		if err := json.Unmarshal([]byte(c), &rt.CapabilityArgs); err != nil {
			fail("CAP_ARGS: %v", err)
		}
	}
	cni := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(os.Getenv("CNI_PATH")), os.Getenv("CNI_CACHE_DIR"), nil)
	ctx := context.Background()
	switch verb {
	case "add":
		res, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail("add: %v", err)
		}
		if err := res.Print(); err != nil {
			fail("printing result: %v", err)
		}
	case "check":
		if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
			fail("check: %v", err)
		}
	case "del":
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			fail("del: %v", err)
		}
	default:
		fail("unknown verb %q", verb)
	}
}
