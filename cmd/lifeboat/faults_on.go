//go:build faultinject

package main

import (
	"log/slog"
	"os"
	"strconv"
	"time"

	"lifeboat/internal/faultinject"
	"lifeboat/pipeline"
)

// installFaults reads the fault-injection variables of this test build
// (go build -tags faultinject, as the e2e tests build lifeboat); the
// released binary has none (faults_off.go).
//
//	LIFEBOAT_FAULT_CORRUPT_SEGMENTS=N  flip a byte in the first N segments received
//	LIFEBOAT_FAULT_SEGMENT_DELAY=D     hold every segment received for D (a slow link)
//	LIFEBOAT_FAULT_SEGMENT_DELAY_FILE=F hold every segment received for the duration
//	                                   F holds when it arrives ("8s"; missing or empty:
//	                                   none), so a test slows and restores the link at run time
func installFaults(srv *pipeline.Server) error {
	if f := os.Getenv("LIFEBOAT_FAULT_SEGMENT_DELAY_FILE"); f != "" {
		slog.Warn("fault injection for tests: every segment received is held for the delay the file holds", "file", f)
		srv.Middleware = faultinject.DelaySegmentsBy(faultinject.DelayFromFile(f))
		return nil
	}
	if v := os.Getenv("LIFEBOAT_FAULT_SEGMENT_DELAY"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return usageError("LIFEBOAT_FAULT_SEGMENT_DELAY=%q: want a duration", v)
		}
		slog.Warn("fault injection for tests: every segment received is held", "delay", d)
		srv.Middleware = faultinject.DelaySegments(d)
		return nil
	}
	const env = "LIFEBOAT_FAULT_CORRUPT_SEGMENTS"
	v := os.Getenv(env)
	if v == "" {
		return nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return usageError("%s=%q: want a count", env, v)
	}
	slog.Warn("fault injection for tests: the first segments received will be corrupted", "count", n)
	srv.Middleware = faultinject.CorruptSegments(n)
	return nil
}
