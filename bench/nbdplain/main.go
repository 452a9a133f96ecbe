// Command nbdplain serves one file over the Lifeboat NBD server with no
// journal, bitmap or tracker: beside the agent and nbdkit in one run it
// tells the front end's cost from the write path's.
//
//	go run ./bench/nbdplain 127.0.0.1:PORT FILE   (export name "disk")
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	"lifeboat/nbd"
)

// file is a Backend over a plain file; Trim and WriteZeroes write nothing
// useful (the benchmark sends neither).
type file struct{ *os.File }

func (f file) WriteZeroes(off, n int64) error { return nil }
func (f file) Trim(off, n int64) error        { return nil }
func (f file) Flush() error                   { return f.Sync() }
func (f file) Size() int64 {
	fi, err := f.Stat()
	if err != nil {
		return 0
	}
	return fi.Size()
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: nbdplain 127.0.0.1:PORT FILE")
		os.Exit(2)
	}
	f, err := os.OpenFile(os.Args[2], os.O_RDWR, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ln, err := net.Listen("tcp", os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	srv := nbd.NewServer()
	srv.Exports = []nbd.Export{{Name: "disk", Backend: file{f}}}
	srv.Serve(ctx, ln)
}
