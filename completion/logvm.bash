# bash completion for logvm (qubes-logvm): subcommands, options, their
# values, and qube names read from the store (--store DIR, default
# /var/lib/qubes-logvm). Installed as
# /usr/share/bash-completion/completions/logvm. Options are kept equal to
# the parsers' by tests/cli/test_completion.py.

_logvm_qubes() {
    local store=/var/lib/qubes-logvm i
    for ((i = 1; i < COMP_CWORD; i++)); do
        [[ ${COMP_WORDS[i]} == --store ]] && store=${COMP_WORDS[i + 1]}
    done
    [[ -d $store/qubes ]] || return 0
    local entry
    for entry in "$store"/qubes/*/; do
        entry=${entry%/}
        printf '%s\n' "${entry##*/}"
    done
}

_logvm() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD - 1]}
    local commands="setup-keys list show follow verify stats open"
    local common="--store --config -h --help"
    local filters="--all -S --since -U --until --utc -p --priority -u --unit
        -t --identifier --console --session -g --grep -i --ignore-case -n --lines
        -r --reverse -o --output --raw --no-pager"
    local command="" i
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${COMP_WORDS[i]} in
            --store | --config) ((i++)) ;;
            -*) ;;
            *) command=${COMP_WORDS[i]}; break ;;
        esac
    done
    case $prev in
        --store) mapfile -t COMPREPLY < <(compgen -d -- "$cur"); return ;;
        --config | --key | --witness | --forwarded) mapfile -t COMPREPLY < <(compgen -f -- "$cur"); return ;;
        -o | --output)
            mapfile -t COMPREPLY < <(compgen -W "short short-precise short-iso cat json raw" -- "$cur")
            return ;;
        -p | --priority)
            mapfile -t COMPREPLY < <(compgen -W "emerg alert crit err warning notice info debug" -- "$cur")
            return ;;
        -S | --since | -U | --until)
            mapfile -t COMPREPLY < <(compgen -W "today yesterday now -1h -10min" -- "$cur")
            return ;;
        -u | --unit | -t | --identifier | --session | -g | --grep | -n | --lines | --epoch-seconds)
            return ;;
        --format)
            mapfile -t COMPREPLY < <(compgen -W "1 2" -- "$cur")
            return ;;
    esac
    local options="$common"
    case $command in
        "") mapfile -t COMPREPLY < <(compgen -W "$commands $common" -- "$cur"); return ;;
        setup-keys) options+=" --epoch-seconds --format" ;;
        list) options+=" --json --utc" ;;
        show) options+=" $filters -f --follow" ;;
        follow) options+=" $filters" ;;
        verify) options+=" --key --witness --forwarded" ;;
    esac
    if [[ $cur == -* ]]; then
        mapfile -t COMPREPLY < <(compgen -W "$options" -- "$cur")
    elif [[ $command != setup-keys ]]; then
        mapfile -t COMPREPLY < <(compgen -W "$(_logvm_qubes)" -- "$cur")
    fi
}

complete -F _logvm logvm
