# Sourced by the test scripts: `install_debian_packages PKG...` installs Debian packages
# non-interactively when running as root with apt-get (as CI does); otherwise it says
# what to install and returns 1.
install_debian_packages() {
    [ "$#" -gt 0 ] || return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
        echo "installing $*"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" > /dev/null
    else
        echo "missing $*: install them as root (apt-get install $*)" >&2
        return 1
    fi
}
