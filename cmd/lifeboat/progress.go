package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/sys/unix"
)

// progress shows a long operation's percentage: a bar in a terminal, and
// elsewhere (a script, a log) a plain line when the whole percent or the
// detail changes, at most every 5 seconds otherwise.
type progress struct {
	w         io.Writer
	label     string
	bar       *progressbar.ProgressBar
	lastPct   int
	lastState string
	lastPrint time.Time
	done      bool
}

func newProgress(w io.Writer, label string) *progress {
	p := &progress{w: w, label: label, lastPct: -1}
	if isTerminal(w) {
		p.bar = progressbar.NewOptions(100, progressbar.OptionSetWriter(w), progressbar.OptionSetDescription(label),
			progressbar.OptionShowElapsedTimeOnFinish(), progressbar.OptionSetWidth(30), progressbar.OptionClearOnFinish())
	}
	return p
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// Set shows pct (0-100), a state and a detail. Without a terminal a line
// is printed when the whole percent or the state changes, and every 10 s
// otherwise (with the detail).
func (p *progress) Set(pct float64, state, detail string) {
	if p.done {
		return
	}
	if p.bar != nil {
		p.bar.Describe(p.label + " " + state)
		p.bar.Set(int(pct))
		return
	}
	if int(pct) != p.lastPct || state != p.lastState || time.Since(p.lastPrint) >= 10*time.Second {
		line := fmt.Sprintf("%s: %.0f%% %s", p.label, pct, state)
		if detail != "" {
			line += ": " + detail
		}
		fmt.Fprintln(p.w, line)
		p.lastPct, p.lastState, p.lastPrint = int(pct), state, time.Now()
	}
}

// Finish ends the bar (a terminal's line is cleared).
func (p *progress) Finish() {
	if p.done {
		return
	}
	p.done = true
	if p.bar != nil {
		p.bar.Finish()
	}
}
