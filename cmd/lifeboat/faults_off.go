//go:build !faultinject

package main

import "lifeboat/pipeline"

// installFaults does nothing: fault injection exists only in the test build
// (-tags faultinject, faults_on.go).
func installFaults(*pipeline.Server) error { return nil }
