// Package browser drives the fleet console in a real headless Chromium
// (playwright-core from npm, Debian's /usr/bin/chromium) against real binaries.
package browser
