package main

import (
	"fmt"
	"runtime"

	"github.com/urfave/cli/v2"

	"lifeboat/hrl"
)

// versionInfo is the JSON form of `lifeboat version --output json`.
type versionInfo struct {
	Version       string `json:"version"`        // build version, "dev" for a plain go build
	GoVersion     string `json:"go_version"`     // toolchain that built the binary
	Platform      string `json:"platform"`       // GOOS/GOARCH
	JournalFormat int    `json:"journal_format"` // hrl.Version: the segment format this build reads and writes
}

func versionCommand() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print the version, the Go version and the journal format version",
		Description: "Prints the build version (set with -ldflags \"-X main.version=...\", \"dev\" otherwise),\n" +
			"the Go toolchain and the journal segment format version this binary reads and writes.\n\n" +
			"Example:\n   lifeboat version --output json",
		Flags:        []cli.Flag{outputFlag()},
		OnUsageError: onUsageError,
		Action: func(c *cli.Context) error {
			format, err := outputFormat(c)
			if err != nil {
				return err
			}
			if _, err := leafArgs(c, 0, "no arguments"); err != nil {
				return err
			}
			v := versionInfo{Version: version, GoVersion: runtime.Version(),
				Platform: runtime.GOOS + "/" + runtime.GOARCH, JournalFormat: hrl.Version}
			w := c.App.Writer
			if format == "json" {
				return printJSON(w, v)
			}
			_, err = fmt.Fprintf(w, "lifeboat %s\ngo:             %s %s\njournal format: %d\n",
				v.Version, v.GoVersion, v.Platform, v.JournalFormat)
			return err
		},
	}
}
