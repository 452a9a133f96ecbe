// Command lifeboat is the single binary of Lifeboat, an open, self-hosted
// site-recovery system for Linux servers. Each role and tool is a
// subcommand; see `lifeboat --help`.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "lifeboat: %v\n", err)
		os.Exit(exitCode(err))
	}
}

// run is the whole program: main only adds the process edges.
func run(ctx context.Context, args []string) error {
	app := newApp(os.Stdout, os.Stderr)
	return app.RunContext(ctx, permuteArgs(app, args))
}

// Exit codes.
const (
	exitFailed = 1 // the command ran and found a problem (e.g. a corrupt journal)
	exitUsage  = 2 // bad arguments, or an input that could not be read at all
)

// exitError carries an exit code through run. It deliberately does not
// implement cli.ExitCoder, so that urfave/cli never calls os.Exit itself and
// run stays testable.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// failure is a finding (exit 1): the command worked, the answer is "bad".
func failure(format string, a ...any) error {
	return &exitError{code: exitFailed, err: fmt.Errorf(format, a...)}
}

// usageError is a mistake in how lifeboat was called, or an input that
// could not be read (exit 2).
func usageError(format string, a ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf(format, a...)}
}

// exitCode maps an error returned by run to the process exit code.
func exitCode(err error) int {
	var e *exitError
	if errors.As(err, &e) {
		return e.code
	}
	return exitFailed
}
