//! A bare x86_64 guest for tests, assembled at test time with gcc and ld: a few hundred bytes
//! of 64-bit code linked at 1 MiB as an ELF that Firecracker boots with the Linux boot
//! protocol (it enters in long mode with identity paging). It prints `BOOT cloudterm-bare-guest`
//! on the serial port (0x3f8), then `tick N` lines with a counter that lives in a register, so a
//! restored snapshot that goes on counting proves the guest's state survived. The `Reset`
//! variant asks the i8042 controller to reset the machine after the banner, which makes
//! Firecracker exit: a VM that dies on its own.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The banner the guest prints first.
pub const BANNER: &str = "BOOT cloudterm-bare-guest";

const SOURCE: &str = r#"
    .code64
    .section .text
    .globl _start
_start:
    cli
    lea stack_top(%rip), %rsp
    mov $0x3f8, %dx
    lea boot_msg(%rip), %rsi
    call puts
#ifdef RESET
    mov $0xfe, %al
    out %al, $0x64
9:  hlt
    jmp 9b
#endif
    xor %r12d, %r12d
1:
    lea tick_msg(%rip), %rsi
    call puts
    mov %r12, %rax
    call putdec
    mov $10, %al
    out %al, %dx
    inc %r12
    call delay
    jmp 1b

/* Prints the NUL-terminated string at %rsi on the serial port (%dx). */
puts:
    lodsb
    test %al, %al
    jz 2f
    out %al, %dx
    jmp puts
2:  ret

/* Prints %rax in decimal. */
putdec:
    lea numbuf_end(%rip), %rdi
    movb $0, (%rdi)
    mov $10, %rcx
3:  xor %edx, %edx
    div %rcx
    add $48, %dl
    dec %rdi
    mov %dl, (%rdi)
    test %rax, %rax
    jnz 3b
    mov $0x3f8, %dx
    mov %rdi, %rsi
    jmp puts

/* Spins for DELAY_CYCLES time-stamp counter cycles. */
delay:
    rdtsc
    shl $32, %rdx
    or %rax, %rdx
    mov %rdx, %r9
    movabs $DELAY_CYCLES, %rax
    add %rax, %r9
4:  pause
    rdtsc
    shl $32, %rdx
    or %rax, %rdx
    cmp %r9, %rdx
    jb 4b
    mov $0x3f8, %dx
    ret

    .section .rodata
boot_msg: .asciz "BOOT cloudterm-bare-guest\n"
tick_msg: .asciz "tick "

    .section .data
numbuf: .fill 24, 1, 0
numbuf_end: .byte 0
    .balign 16
stack: .fill 4096, 1, 0
stack_top:
"#;

const LINKER_SCRIPT: &str = r#"
ENTRY(_start)
SECTIONS {
  . = 0x100000;
  .text : { *(.text*) }
  .rodata : { *(.rodata*) }
  .data : { *(.data*) *(.bss*) }
  /DISCARD/ : { *(.note*) *(.comment*) *(.eh_frame*) }
}
"#;

/// Which guest to build.
#[derive(Debug, Clone, Copy)]
pub enum Guest {
    /// Banner, then a tick every `delay_cycles` TSC cycles, forever.
    Ticker {
        /// Cycles between ticks (about 1e8 is a few tens of milliseconds).
        delay_cycles: u64,
    },
    /// Banner, then a machine reset: Firecracker exits.
    Reset,
}

/// Assembles and links `guest` into `dir`; returns the ELF's path.
pub fn build(dir: &Path, guest: Guest) -> PathBuf {
    let (name, defines) = match guest {
        Guest::Ticker { delay_cycles } => ("ticker", vec![format!("-DDELAY_CYCLES={delay_cycles}")]),
        Guest::Reset => ("reset", vec!["-DRESET".to_owned(), "-DDELAY_CYCLES=1".to_owned()]),
    };
    let source = dir.join(format!("{name}.S"));
    let object = dir.join(format!("{name}.o"));
    let script = dir.join("guest.ld");
    let elf = dir.join(format!("{name}.elf"));
    std::fs::write(&source, SOURCE).expect("write the guest source");
    std::fs::write(&script, LINKER_SCRIPT).expect("write the linker script");
    run(Command::new("gcc").arg("-c").args(&defines).arg("-o").arg(&object).arg(&source));
    run(Command::new("ld")
        .args(["-nostdlib", "-static", "-z", "max-page-size=0x1000", "--build-id=none", "--no-warn-rwx-segments", "-T"])
        .arg(&script)
        .arg("-o")
        .arg(&elf)
        .arg(&object));
    elf
}

fn run(command: &mut Command) {
    let output =
        command.output().unwrap_or_else(|err| panic!("cannot run {command:?} (install gcc and binutils): {err}"));
    assert!(output.status.success(), "{command:?} failed: {}", String::from_utf8_lossy(&output.stderr));
}

/// The `tick N` counters a console shows, in order.
pub fn ticks(console: &str) -> Vec<u64> {
    console.lines().filter_map(|line| line.strip_prefix("tick ")?.trim().parse().ok()).collect()
}
